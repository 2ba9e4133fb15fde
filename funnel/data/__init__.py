"""The data layer: interaction datasets, their validating loaders, and the MovieLens 100K fetcher."""
