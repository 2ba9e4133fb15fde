"""The release layer: the release format, the artifact store and channels, and loaders for each stage's half."""
