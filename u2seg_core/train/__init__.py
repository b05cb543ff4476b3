"""Training the Panoptic Cascade Mask R-CNN on the merged pseudo-labels (the `train` stage).

`training_losses(model, batched_inputs)` (forward.py) is the loss of one batch; `train_model` (loop.py) the
resumable training loop of one process; `launch` (launch.py) starts it in one or several DDP processes.
"""
