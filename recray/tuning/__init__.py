"""Ray Tune searches over the towers' hyperparameters.

space       the search space and how a trial's sample becomes a config
validation  HR@100 of a seeded validation sample, after every epoch
trial       one trial: a TensorflowTrainer run inside a Tune function
report      the static HTML report of a search
search      the Tuner: ASHA, resources, resume, best config as YAML
"""
