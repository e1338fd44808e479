"""The conformance suite (issue 25): an nbgrader course, its students and the harness that grades them."""
