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
                eval and translate (fairseq, or CTranslate2 on the export)
    common/     what several commands share: the run directory (locks, atomic writes), the
                prepared data's manifest and directions, line-aligned text, progress bars

A single-pair run is the one-direction case of a multilingual one: every command reads one
manifest schema (``common/manifest.py``) and one report schema (``evaluate/report.py``).

Imports go one way: compare -> evaluate, train; distill -> evaluate, train, translate;
evaluate -> export -> translate; translate, train -> prep (the run's directions); every command
-> common. One exception, imported when called: ``translate_stream`` (``moemt translate``) asks
``export.engine`` for the translator of ``eval.engine``.
Nothing here imports ``moe_mt.cli``.
"""
