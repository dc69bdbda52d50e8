"""One-off studies behind the open issues: what was tried, on which machine, with the numbers it gave.

Not part of ``make bench``; each module says how to run it and writes its rows to JSON.
"""
