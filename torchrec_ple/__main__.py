from torchrec_ple.cli import run

if __name__ == "__main__":
    run()
