"""The paper study, apart from the installed library (``scripts/reproduce.py`` runs it from the repository):

* :mod:`study.arms`: a run (network, method, seed) and the methods' labels;
* :mod:`study.runner`: the tables' plans, each run's config, the seeds, the follow-up rule, training them
  (:func:`agq_keras.experiments.run.run` per run) into a workdir and the committed record (docs/runs);
* :mod:`study.verdicts`: Welch's test and the claims;
* :mod:`study.report`: docs/results.md and its convergence plot, from the record.

It imports the library; the library never imports it (tests/test_imports.py).
"""
