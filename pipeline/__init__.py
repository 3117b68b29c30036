"""Everything that computes: views, loaders, objectives, models, training and inference."""
