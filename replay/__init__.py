"""Sources: replay a file of position reports into Kafka, and generate seeded sample data."""
