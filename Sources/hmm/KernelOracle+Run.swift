import ArgumentParser
import KernelOracle

#if canImport(Glibc)
import Glibc
#endif

/// The kernel oracle's side of `hmm selftest --oracle` and `hmm run --oracle`.
enum KernelOracleRun {
    /// Runs `oracle.sh ARGS` and returns its output. When the run fails, what the kernel printed
    /// before it broke (the most interesting part) is printed, and kept in `save`; then the
    /// command exits with status 2.
    /// With `keepPartial`, a run that printed something before the VM stopped (a kernel oops
    /// ends it) gives that output, and the command goes on to compare it.
    static func output(_ args: [String], command: String, save: String?, keepPartial: Bool = false) throws -> String {
        do { return try OracleScript.locate().run(args) } catch {
            if case .failed(let status, let output) = error, !output.isEmpty {
                if keepPartial && status == 3 {   // oracle.sh: the VM ended without the command's exit status
                    BenchRecord.printError("\(command): \(error); comparing what it printed before it stopped")
                    return output
                }
                BenchRecord.printError(output)
                if let save, let f = fopen(save, "w") { fputs(output, f); fclose(f) }
            }
            BenchRecord.printError("\(command): \(error)")
            throw ExitCode(2)
        }
    }

    /// Keeps the kernel's output in `save` (`--save-oracle-output`), if given.
    static func keep(_ text: String, in save: String?) throws {
        guard let save else { return }
        guard let f = fopen(save, "w") else { throw ValidationError("--save-oracle-output: cannot write \(save)") }
        fputs(text, f); fclose(f)
    }
}
