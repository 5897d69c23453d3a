"""ASR evaluation: transcription with the native model, CER/WER scoring, reports."""
