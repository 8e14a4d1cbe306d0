"""Readers that yield a `medpeft.data.records.Source`: CSV manifests, image folders,
public datasets' native layouts and the synthetic task."""

from medpeft.data.sources.csv import csv_source, read_inputs
from medpeft.data.sources.folder import folder_source
from medpeft.data.sources.recipes import RECIPES, recipe_source
from medpeft.data.sources.synthetic import synthetic_source

__all__ = ["RECIPES", "csv_source", "folder_source", "read_inputs", "recipe_source", "synthetic_source"]
