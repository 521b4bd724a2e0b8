"""Callbacks for training frameworks: `lightning` (PyTorch Lightning) and `transformers`
(Hugging Face Trainer). Each needs its framework: ``pip install gradscope[lightning]`` or
``pip install gradscope[transformers]``."""
