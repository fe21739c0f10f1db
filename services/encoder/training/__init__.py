"""Training DenseNet-121 on chest X-ray labels, one module per step of a training run.

``config`` (recipes, ``TrainConfig``), ``split`` (patient-disjoint), ``dataset`` (the images,
normalisation), ``losses``, ``schedules`` (rate, input size, time limit), ``validation`` (loss,
AUROC), ``best_epoch`` (the weights kept), ``label_metric`` (fit after the last epoch),
``record`` (what the checkpoint records); ``loop`` runs them (``train_encoder``), ``process``
runs that in its own process, ``demo_checkpoint`` trains the demo's checkpoint once.
"""
