"""``medvol reproduce NAME``: a published table, re-run end to end with seeds and confidence intervals.

A study is a YAML file in ``medvol/studies/`` (shipped with medvol; or any
path given as NAME)::

    name: adrenalmnist3d
    description: one line
    budgets: {cpu: recipes/adrenalmnist3d-resnet18-cpu.yaml, full: recipes/adrenalmnist3d-resnet18.yaml}
    data:                                       # medvol.fetch: where the recipes' data comes from
      - {path: adrenalmnist3d/adrenalmnist3d.npz, url: https://..., md5: bbd3...}
    evaluate: {split: test, checkpoint: best}   # what is scored once, after training
                                                # flip_tta: true averages over the trained flips;
                                                # largest_component: true keeps each class's largest component
    metrics: [auc, accuracy, balanced_accuracy] # the columns of the table
    published:
      sources: {medmnist: paper, table and year of the published figures}
      rows: [{method: ResNet-18+3D, auc: 0.827, accuracy: 0.721, source: medmnist}, ...]

A recipe's relative ``data.root`` names a path in the data folder
(``medvol.fetch.data_folder``); the study's data there is downloaded and
verified first (``medvol.fetch``). A ``data.root`` given with ``--set`` is used
as given, and nothing is downloaded.

For each seed ``0 .. K-1`` the budget's experiment config is trained with
``train.seed`` set (model selection uses validation data only, as the config
says), then evaluated once as ``evaluate`` says, with a case-level bootstrap
CI. The table gives, per metric, the mean over seeds with its 95% t-interval
clipped to the metric's range, the lowest and highest seed
(``medvol.evaluation.aggregate.over_runs``), each seed's value with its
bootstrap CI, and the published figures with their sources. A finished seed is
not trained or evaluated again, so an interrupted reproduction continues where
it stopped and the test split is scored once per run.

A binary classifier scored on its test split also gets, per seed, the
validation cases of the same checkpoint scored (``reproduce-val``) to choose a
decision threshold (``medvol.evaluation.classification.choose_threshold``),
and accuracy and balanced accuracy on the test cases at that threshold, beside
those at 0.5; and the table gets a majority-class row (the class most frequent
in the training split). Every test evaluation found in the output folder is
kept in ``test-evaluations.json`` (which runs, which recipe, when), so the
table states how many times the test split was scored and for which recipes.
``--publish DIR`` copies ``results.json``, that record, each seed's config and
each evaluation's ``summary.json`` and ``cases.csv`` to ``DIR``: the small
files every figure of the table can be derived from again, with each run's
``environment.json``, ``fingerprint.json`` and ``metrics.jsonl``. ``--reuse DIR``
takes the runs published in ``DIR`` instead of training them again (their
recipe must be the one asked for): the table is derived again from the
committed files, and a published table can be extended by seeds or folds.

``--folds 0-4`` (a segmentation study scored on validation cases, whose recipe
is split into folds) runs every seed on each fold given, one run folder per
fold and seed, and heads the table with nnU-Net's cross-validation mean: per
seed, the per-case values of all the folds' validation cases pooled and
averaged (:func:`cross_validation`), then over seeds; with the spread over
folds and seeds and a row per fold.
"""

from medvol.reproduce.folds import check_folds, cross_validation, parse_folds
from medvol.reproduce.ledger import TEST_LEDGER, publish_results, record_test_evaluations
from medvol.reproduce.runner import prepare_data, reproduce
from medvol.reproduce.scores import threshold_on_validation
from medvol.reproduce.study import STUDIES_DIR, Study, available_studies, load_study
from medvol.reproduce.tables import format_results

__all__ = [
    "STUDIES_DIR",
    "TEST_LEDGER",
    "Study",
    "available_studies",
    "check_folds",
    "cross_validation",
    "format_results",
    "load_study",
    "parse_folds",
    "prepare_data",
    "publish_results",
    "record_test_evaluations",
    "reproduce",
    "threshold_on_validation",
]
