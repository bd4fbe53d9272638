import ArgumentParser
import Devices
import MMCore

/// `hmm svm`: runs workloads on the GPU-like SVM device under each placement policy and prints
/// what the device did, in virtual and wall time, with every word checked.
struct SVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run workloads on the GPU-like SVM device under its policies and compare them.",
        discussion: """
        Each run starts a fresh machine, fills the working set from the CPU, runs the workload's \
        kernels on the device's engines, then checks every word against a reference model and \
        the device's page table against the CPU's. Virtual time comes from the device's cost \
        table (fault batches, link copies, remote accesses), so policies compare the same way \
        on a busy machine as on an idle one. Exit status 1 if any run's data or invariants are wrong.
        """)

    @Option(help: "Workload: \(SVMWorkloadKind.allCases.map(\.rawValue).joined(separator: ", ")), or all.")
    var workload: String = "all"
    @Option(help: "Policy: \(SVMRunner.policyNames.joined(separator: ", ")), or all.")
    var policy: String = "all"
    @Option(help: "Working set in 4 KiB pages (2...65536).")
    var pages: Int = 2048
    @Option(name: .customLong("device-mib"), help: "Device memory in MiB, a multiple of 2 (2...1024).")
    var deviceMiB: UInt64 = 64
    @Option(name: .customLong("machine-mib"), help: "System memory in MiB (16...16384).")
    var machineMiB: UInt64 = 256
    @Option(help: "Engines running each kernel (1...64).")
    var engines: Int = 4
    @Option(help: "Rounds of the ping-pong workload (1...1000).")
    var rounds: Int = 4
    @Option(name: .customLong("cpu-threads"), help: "CPU threads reading and writing the same pages while the kernels run (0...16).")
    var cpuThreads: Int = 0
    @Option(name: .customLong("cost"), help: ArgumentHelp(
        "Override one virtual-time cost, NAME=VALUE (repeatable).",
        discussion: "Names: \(SVMCosts.names.map(\.0).joined(separator: ", ")).", valueName: "name=value"))
    var cost: [String] = []
    @Flag(help: "THP \"always\": the workload's memory is THPs where 2 MiB fit, moved as 2 MiB device pages.")
    var thp = false

    func validate() throws {
        guard workload == "all" || SVMWorkloadKind(rawValue: workload) != nil else { throw ValidationError("unknown --workload \(workload)") }
        guard policy == "all" || SVMRunner.policy(named: policy) != nil else { throw ValidationError("unknown --policy \(policy)") }
        guard (2...65536).contains(pages) else { throw ValidationError("--pages must be between 2 and 65536") }
        guard (2...1024).contains(deviceMiB), deviceMiB % 2 == 0 else { throw ValidationError("--device-mib must be an even number between 2 and 1024") }
        guard (16...16384).contains(machineMiB) else { throw ValidationError("--machine-mib must be between 16 and 16384") }
        guard (1...64).contains(engines) else { throw ValidationError("--engines must be between 1 and 64") }
        guard (1...1000).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 1000") }
        guard (0...16).contains(cpuThreads) else { throw ValidationError("--cpu-threads must be between 0 and 16") }
        var c = SVMCosts()
        do { try c.apply(cost) } catch {
            throw ValidationError("--cost takes NAME=VALUE with a whole number; names: \(SVMCosts.names.map(\.0).joined(separator: ", "))")
        }
    }

    func run() throws {
        let kinds = workload == "all" ? SVMWorkloadKind.allCases : [SVMWorkloadKind(rawValue: workload)!]
        let policies = policy == "all" ? SVMRunner.policyNames : [policy]
        var costs = SVMCosts()
        try costs.apply(cost)
        print("\(pages) pages (\(pages * 4 / 1024) MiB) on a \(deviceMiB) MiB device, \(engines) engines, \(machineMiB) MiB of RAM"
              + (cpuThreads > 0 ? ", \(cpuThreads) CPU threads beside the kernels" : "") + (thp ? ", THP always" : ""))
        var results: [SVMRunResult] = []
        for k in kinds {
            for p in policies {
                do {
                    results.append(try SVMRunner.run(k, policy: SVMRunner.policy(named: p)!, pages: pages, engines: engines, rounds: rounds,
                                                     cpuThreads: cpuThreads, machineMiB: machineMiB, deviceMiB: deviceMiB, costs: costs,
                                                     thp: thp))
                } catch let e as Errno {
                    let hint = e == .ENOMEM ? ": try a larger --machine-mib" : ""
                    throw SVMRunFailure(description: "\(k.rawValue) under \(p) failed with \(e.name) (\(e.message))\(hint)")
                } catch let f as SVMFatalFault {
                    throw SVMRunFailure(description: "\(k.rawValue) under \(p): the kernel was cancelled by a \(f)")
                }
            }
        }
        print(SVMTable.text(results), terminator: "")
        let bad = !results.allSatisfy { $0.mismatches == 0 && $0.invariantProblems.isEmpty }
        if bad { throw ExitCode(1) }
    }
}


/// A run that could not finish (reported without the usage text: the arguments were fine).
struct SVMRunFailure: Error, CustomStringConvertible { let description: String }
