"""Where Trustyard keeps bytes (blob stores) and rows (the metadata database)."""
