"""Analysis: figures and tables read from the store."""
