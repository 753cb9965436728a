"""A declarative deep-learning experiment pipeline: the composed Hydra config is the experiment."""
