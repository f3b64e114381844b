"""Plumbing for the image captioning course.

Lessons keep their model code in the notebook; this package holds what is not lesson
content: the offline data slice (`data_slice`), the profiles and headless runner
(`profiles`, `runner`), and the small record a notebook leaves for the runner (`record`).
"""
