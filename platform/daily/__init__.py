"""The daily recommender pipeline: data, catalog-scale training, batch predictions."""
