"""nbgrader configuration for the course (run nbgrader, or `courselib`, from this folder)."""

import os

c = get_config()

c.CourseDirectory.course_id = "ondevice-ml"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(c.CourseDirectory.root, "gradebook.db")

# What a student sees in place of a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Lab solutions run in <= 30 s; leave headroom for slow machines.
c.ExecutePreprocessor.timeout = 180
c.Execute.timeout = 180
c.Execute.interrupt_on_timeout = True
