"""Scripts for checking the project as a user meets it: kill campaigns, bad-input probes, forced NaN."""
