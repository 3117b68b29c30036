"""Data: dataset sources, view policies, DALI replay, augmentation and mixing."""
