"""Developer tools that are not tests: the dashboard's page-time benchmark, its load tester, an import-cycle check.

They drive the dashboard from outside (Streamlit's AppTest, browser sessions against a server), so they live
with the tests rather than in the product; run them from the repository root::

    python -m tests.tools.dashboard_bench --trials 200          # make dashboard-bench
    python -m tests.tools.dashboard_load --outputs OUT --image A --sessions 4 --seconds 120
    python -m tests.tools.import_cycles engine tuning dashboard   # exit 1 on a cycle
"""
