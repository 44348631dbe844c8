"""handprop: backpropagation by hand.

A multilayer perceptron learns handwritten digits; every layer's gradient comes from a
backward pass written out in ``handprop.functional`` (3Blue1Brown's backpropagation
lesson, as code), and PyTorch Lightning runs the training.

    functional  the math: activations and derivatives, costs and gradients, autograd.Functions
    nn          the manual Linear layer and the MLP
    module      the LightningModule (cost, metrics, optimiser)
    data        IDX files, the embedded MNIST sample, the LightningDataModule
    train       train(cfg) / evaluate(cfg), called by train.py / eval.py
    compose     compose(overrides): the config `python train.py OVERRIDES` runs, for a notebook

In a notebook (notebooks/backprop.ipynb)::

    from handprop import compose
    from handprop.train import train
    metrics = train(compose(["model.hidden=[64]", "trainer.max_epochs=3"]))
"""

from .compose import compose  # (the function: handprop.compose is no longer the module's name here)

__version__ = "0.1.0"
__all__ = ["__version__", "compose"]
