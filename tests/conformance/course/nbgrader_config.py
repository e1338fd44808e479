"""nbgrader configuration of the conformance course (tests/conformance): as labs/nbgrader_config.py, minimal.

The harness (tests/conformance/harness.py) copies this course into a scratch folder and runs nbgrader
there, so ``root`` is that copy and the gradebook is the copy's own.
"""

import os

c = get_config()  # noqa: F821 (nbgrader's config loader provides get_config)

c.CourseDirectory.course_id = "conformance"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(c.CourseDirectory.root, "gradebook.db")

# What a student sees in place of a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Every notebook of this course runs in a few seconds.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
