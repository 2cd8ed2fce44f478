"""``python -m privacy.report``: rewrite privacy/report_schema.json from the report's models."""

from privacy.report.schema import write_report_schema

if __name__ == "__main__":
    print(write_report_schema())
