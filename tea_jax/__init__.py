"""tea_jax: TEA (Text-Enhanced Alignment) for video moment retrieval, in JAX/Flax."""

import os

# TensorFlow only feeds data (tf.data, TensorBoard files); keep its C++ start-up chatter quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
