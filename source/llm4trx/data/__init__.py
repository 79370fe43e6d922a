"""Raw data: the loaders of each raw schema, the CSV reader, the split protocol, the synthetic generator."""
