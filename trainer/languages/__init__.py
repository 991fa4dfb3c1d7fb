"""Language typology: the language table (FLORES-200 / ISO codes, script, family, Joshi class), URIEL+
feature distances, and the selection of language subsets (M3)."""
