"""Torch side of SeisBind: simulator, synthetic families, encoders, training, evaluation and export."""
