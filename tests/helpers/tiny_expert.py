"""The tiny expert network the train, export and runtime-expert tests build: trains and exports in seconds."""

TINY = dict(cloud_channels=(16, 32), cloud_feat=32, obs_feat=32, step_embed=16, down_dims=(16, 32))
