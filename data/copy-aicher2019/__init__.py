"""The paper's own copy-task data (see README.md and LICENSE here); read by atbptt.data."""
