"""Downstream augmentation gain (Malik & Humair 2023, Table I;
Kumar & Triana 2023): do synthetic images help a real classifier?

A binary task ``"A vs B"`` (label names, ``No Finding`` allowed) is learned from four training sets and
tested on the same held-out real images:

``real``       N real images                      ``mixed``      N/2 real + N/2 synthetic (Malik & Humair)
``augmented``  the N real images + K synthetic    ``synthetic``  N synthetic images only

Every training set is class-balanced. The test set is drawn once (patient-disjoint from the training pool
when patient ids exist; exact file copies of test images are removed from the pool too); each seed redraws
the training subsets and re-initialises the classifier. Reported per mode: accuracy and AUROC (mean over
seeds, bootstrap CI over test images and training seeds, per-seed values and their std); and the paired
differences ``aug_gain_*`` (augmented - real) and ``aug_mixed_delta_*`` (mixed - real), whose CIs resample the
same test images and seeds for both modes.

Classifiers: ``linear`` (logistic regression on frozen features, extracted once through the harness and its
feature cache), ``cnn`` (a small CNN on 64 px images) and ``densenet`` (torchxrayvision DenseNet121
fine-tuned; published weights when ``weights`` finds them).

Modules, one per concern (import from the defining module; this package re-exports nothing):
``config`` (the knobs, output keys, the outcome), ``labels`` (the task and its binary labels), ``splits``
(named splits, the test draw, balanced training draws), ``stats`` (AUROC, accuracy, the seed-and-test CI),
``classifiers`` (the registered classifiers), ``run`` (:func:`~.run.augment`), ``protocol`` (the registry
entry and the figure).
"""
