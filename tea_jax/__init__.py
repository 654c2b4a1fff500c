"""tea_jax: TEA (Text-Enhanced Alignment) for video moment retrieval, in JAX/Flax."""

import os

# TensorFlow only feeds data (tf.data, TensorBoard files); keep its C++ start-up chatter quiet. Its
# oneDNN kernels announce themselves at start-up whatever the log level says; tf.data's parsing,
# padding and casts do no arithmetic they would speed up.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
