"""Key information extraction: SER (segment labels) and RE (key → value links)."""
