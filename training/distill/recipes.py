"""Distillation recipes written once: the loss lists that configs, the config generator and the quickstart share."""

CSC = {"name": "csc", "weight": 10.0, "student": ["feature"], "teacher": ["feature"]}
"""Park & Heo's channel-and-spatial correlation loss on the pre-classifier features (CIRKD-style weight 10)."""

ACE = {"name": "ace", "weight": 1.0, "student": ["output"], "teacher": ["output"], "params": {"mode": "switch"}}
"""Park & Heo's adaptive cross entropy on the outputs: the teacher's distribution where it is right, else the label."""

CSC_ACE = [CSC, ACE]
"""CSC + ACE as the paper pairs them; with ``distill.task_weight`` 0 ACE replaces the cross entropy, 1 adds it."""
