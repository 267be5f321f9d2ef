"""Test scaffolding shared by the test modules and the dashboard's render benchmark (not product code).

``fixture``    a real tiny outputs folder (a tuning sweep, evaluated and explained trials) for the dashboard tests;
``synthetic``  fabricated outputs in the same contract (engine.runs, tuning.layout) for the 200-trial benchmark.
"""
