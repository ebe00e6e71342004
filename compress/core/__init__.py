"""The torch-only core: masks, masking, the training loop, schedules, scores, structure."""
