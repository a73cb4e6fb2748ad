"""Built-in example sweeps (YAML files beside this module); all run offline."""
