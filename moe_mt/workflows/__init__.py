"""moemt's commands as library functions: what the CLI calls and what tests call directly.

Each takes a resolved config (:func:`moe_mt.config.load_config`) and works in one experiment
directory. One subpackage per command, in pipeline order, each holding its own helpers::

    prep/       corpora in, sentencepiece + binarised fairseq data out (``RUN_DIR/data``)
    train/      fairseq training in the run directory: arguments, launch, live view, summary
    translate/  a loaded checkpoint translating lines (beam search, language tokens)
    evaluate/   translate a test set and score it (sacreBLEU, bootstrap, expert usage, THOR)
    distill/    a dense student from an MoE teacher (initialisation, teacher outputs, report)
    compare/    evaluated runs side by side, paired bootstrap against a baseline
    export/     a run as a CTranslate2 model (deployment), and eval.engine: the decoder of
                eval and translate (fairseq, or CTranslate2 on the export); translate's stream
    common/     what several commands share: the run directory (locks, atomic writes), the
                prepared data's manifest and directions, line-aligned text, progress bars,
                a model's weights from another's

A single-pair run is the one-direction case of a multilingual one: every command reads one
manifest schema (``common/manifest.py``) and one report schema (``evaluate/report.py``).

Imports go one way, down these layers (``tests/test_layering.py`` checks every import, those
inside functions too)::

    compare > distill > evaluate > export > translate > train > prep > common

A subpackage imports those below it, never one above. ``translate/`` holds the fairseq
decoder that export, evaluate and distill build on; ``moemt translate`` itself chooses between
that decoder and CTranslate2 on the export, so it sits with the engine, in ``export/stream.py``.
One import goes against the layers for now (the test lists it): ``common/model_init.py`` builds
a model from train's fairseq arguments. Nothing here imports ``moe_mt.cli``.
"""
