"""Figures read back from the matplotlib objects: panels, lines, labels, scales, layouts."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from trainlab.analysis.frames import load_sweep
from trainlab.analysis.layout import default_layout, explicit_layout
from trainlab.analysis.plots import curve_figures
from trainlab.errors import ConfigError


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_default_layout_is_the_reports_layout(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    layouts = default_layout(frames)
    summary = [(lay.fixed, lay.panel_key, [p.title for p in lay.panels]) for lay in layouts]
    assert summary == [
        ({"model.name": "lstm", "model.layers": 1}, "optimizer.name",
         ["optimizer=adam", "optimizer=sgd"]),
        ({"model.name": "gpt", "model.layers": 1}, "optimizer.name",
         ["optimizer=adam", "optimizer=sgd"]),
        ({"model.name": "lstm", "optimizer.name": "adam"}, "model.layers",
         ["layers=1", "layers=2"]),
        ({"model.name": "gpt", "optimizer.name": "adam"}, "model.layers",
         ["layers=1", "layers=2"]),
    ]
    assert [ln.numbers for p in layouts[2].panels for ln in p.lines] == ["1", "5"]


def test_curves_over_epochs(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    figs = curve_figures(frames, default_layout(frames), "perplexity", "epoch")
    assert len(figs) == 4
    fig = figs[0]
    axes = _visible(fig.figure)
    assert len(axes) == 3  # adam, sgd, and both validation curves together
    assert [ax.get_title() for ax in axes] == [
        "(a) optimizer=adam", "(b) optimizer=sgd", "(c) validation, by optimizer"]
    assert [len(ax.get_lines()) for ax in axes] == [2, 2, 2]  # train+valid, train+valid, 2 valid
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    assert axes[0].get_ylabel() == "perplexity (log scale)"
    assert all(ax.get_yscale() == "log" for ax in axes)
    train, valid = axes[0].get_lines()
    assert train.get_linestyle() == "--" and valid.get_linestyle() == "-"
    assert list(train.get_xdata()) == [1, 2, 3, 4]
    assert list(valid.get_ydata()) == [260, 160, 120, 100]  # run 1's validation PPL
    legend = [t.get_text() for t in fig.figure.legends[0].get_texts()]
    assert legend == ["train", "validation"]
    assert fig.figure._suptitle.get_text() == (
        "Perplexity over epochs: model=lstm, layers=1, by optimizer")
    assert fig.name == "perplexity-epoch-model-lstm-layers-1"
    assert "(a) optimizer=adam: run 1" in fig.caption and "(b) optimizer=sgd: run 2" in fig.caption


def test_curves_over_training_time_say_what_the_clock_is(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    layouts = default_layout(frames)
    fig = curve_figures(frames, layouts, "perplexity", "time")[2]  # lstm, adam: 1 vs 2 layers
    axes = _visible(fig.figure)
    assert axes[0].get_xlabel() == "training time (s)"
    assert list(axes[1].get_lines()[1].get_xdata()) == [6, 12, 18, 24]  # run 5's time/train
    assert "evaluation, checkpoints and store writes are excluded" in fig.caption
    wall = curve_figures(frames, layouts, "perplexity", "time", clock="wall")[2]
    axes = _visible(wall.figure)
    assert axes[0].get_xlabel() == "wall-clock time (s)"
    # The fake store's wall clock adds 0.5 s of evaluation per epoch.
    assert list(axes[1].get_lines()[1].get_xdata()) == [6.5, 13, 19.5, 26]
    assert "evaluation, checkpoints and store writes included" in wall.caption


def test_loss_is_linear_scale(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    fig = curve_figures(frames, default_layout(frames), "loss", "epoch")[0]
    ax = _visible(fig.figure)[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "loss"


def test_explicit_layout_panel_and_hue(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    layouts = explicit_layout(frames, None, "optimizer", ["model"])
    # Facets: the remaining key (layers); within layers=1 the panels split by optimizer.
    assert [lay.fixed for lay in layouts] == [{"model.layers": 1}, {"model.layers": 2}]
    fig = curve_figures(frames, layouts, "perplexity", "epoch")[0]
    axes = _visible(fig.figure)
    assert len(axes) == 2  # no overlay panel when a hue is set
    assert len(axes[0].get_lines()) == 4  # lstm and gpt, train and valid
    colours = {ln.get_color() for ln in axes[0].get_lines()}
    assert len(colours) == 2
    legend = [t.get_text() for t in fig.figure.legends[0].get_texts()]
    assert legend == ["train", "validation", "model=lstm", "model=gpt"]


def test_a_key_left_out_joins_the_hue(lm_store) -> None:
    frames = load_sweep(lm_store, "lm")
    layouts = explicit_layout(frames, ["model"], None, None)
    assert [lay.fixed for lay in layouts] == [{"model.name": "lstm"}, {"model.name": "gpt"}]
    assert layouts[0].hue_keys == ("model.layers", "optimizer.name")
    assert len(layouts[0].panels) == 1 and len(layouts[0].panels[0].lines) == 3


@pytest.mark.parametrize(("facet", "panel", "hue", "message"), [
    (["archh"], None, None, "`--facet`: 'archh' is not a varied key"),
    (None, "optimiser", None, "did you mean 'optimizer'"),
    (None, None, ["lr"], "`--hue`: 'lr'"),
    (["model"], "model", None, "more than one"),
])
def test_unknown_or_repeated_layout_keys(lm_store, facet, panel, hue, message) -> None:
    frames = load_sweep(lm_store, "lm")
    with pytest.raises(ConfigError, match=message):
        explicit_layout(frames, facet, panel, hue)


def test_seeds_draw_the_mean_with_a_band(make_store) -> None:
    runs = [{"values": {"optimizer.name": opt}, "seed": seed,
             "train": [10.0 + seed, 8.0 + seed], "valid": [9.0 + 2 * seed, 7.0 + 2 * seed],
             "time": [1.0, 2.0]} for opt in ("adam", "sgd") for seed in (0, 1)]
    frames = load_sweep(make_store("s", ["optimizer.name", "train.seed"], runs), "s")
    layouts = default_layout(frames)
    assert [p.title for p in layouts[0].panels] == ["optimizer=adam", "optimizer=sgd"]
    fig = curve_figures(frames, layouts, "perplexity", "epoch")[0]
    ax = _visible(fig.figure)[0]
    _, valid = ax.get_lines()
    assert list(valid.get_ydata()) == [10.0, 8.0]  # mean of 9/11 and 7/9
    assert len(ax.collections) == 2  # one band per curve
    assert "mean over seeds" in fig.caption and "runs 1, 2" not in fig.caption
    assert "run 1, 2" in fig.caption or "run 1-2" in fig.caption


def test_single_key_and_no_key_layouts(make_store) -> None:
    runs = [{"values": {"optimizer.lr": lr}, "train": [3.0, 2.0], "valid": [2.5, 1.5],
             "time": [1, 2]} for lr in (0.1, 0.01, 0.001)]
    frames = load_sweep(make_store("one", ["optimizer.lr"], runs), "one")
    layouts = default_layout(frames)
    assert len(layouts) == 1 and [p.title for p in layouts[0].panels] == [
        "lr=0.001", "lr=0.01", "lr=0.1"]
    single = load_sweep(make_store("single", [], runs[:1]), "single")
    figs = curve_figures(single, default_layout(single), "perplexity", "epoch")
    axes = _visible(figs[0].figure)
    assert len(axes) == 1 and len(axes[0].get_lines()) == 2 and axes[0].get_title() == ""
