"""Other APIs' shapes, translated to and from the OpenAI shape the mesh speaks."""
