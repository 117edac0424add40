"""Student loading, SFT data preparation and trainer setup."""
