"""The training records: their schema (shared with data_prep) and the tf.data reader."""
