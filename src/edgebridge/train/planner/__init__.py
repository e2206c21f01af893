"""The planner VLM: vocabulary, torch model, pointing data and SFT (``python -m edgebridge.train.planner``)."""
