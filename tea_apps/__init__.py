"""Applications on top of the library: the demo, predictions on one video, EMB checkpoint import.

Unlike the library, apps may use the offline side (data_prep) too.
"""
