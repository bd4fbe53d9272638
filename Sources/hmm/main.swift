print("hmm")
