"""mllm"""
