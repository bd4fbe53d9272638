import Conformance
import Devices

/// A Chrome trace-event file (the JSON that ui.perfetto.dev and chrome://tracing open) of SVM
/// runs, one process each: one track per engine (its kernel, its stalls from fault to replay,
/// its faults), one for the fault thread (each batch), one for migrations and one for the CPU
/// threads' faults back. Times are wall microseconds since each run's trace started.
public enum TraceEvents {
    public static func json(_ runs: [(title: String, trace: SVMTrace)], engines: Int) -> String {
        var out: [String] = []
        for (k, run) in runs.enumerated() { events(run.trace, engines: engines, title: run.title, pid: k + 1, into: &out) }
        return "{\"traceEvents\":[\n" + out.joined(separator: ",\n") + "\n],\"displayTimeUnit\":\"ns\"}\n"
    }

    static func events(_ trace: SVMTrace, engines: Int, title: String, pid: Int, into out: inout [String]) {
        let events = trace.events
        let faultTid = 100, migrateTid = 101, cpuTid = 102
        func us(_ ns: UInt64) -> String { String(Double(ns) / 1000) }
        func name(_ tid: Int, _ n: String) {
            out.append(#"{"ph":"M","pid":\#(pid),"tid":\#(tid),"name":"thread_name","args":{"name":"\#(n)"}}"#)
        }
        out.append(#"{"ph":"M","pid":\#(pid),"name":"process_name","args":{"name":"\#(jsonEscape(title))"}}"#)
        for e in 0..<engines { name(e, "engine \(e)") }
        name(faultTid, "fault thread"); name(migrateTid, "migrations"); name(cpuTid, "CPU faults back")
        var stallStart: [Int: UInt64] = [:], kernelStart: [Int: (UInt64, String)] = [:]
        for e in events {
            switch e.kind {
            case .kernelStart(let engine, let n): kernelStart[engine] = (e.wallNs, n)
            case .kernelEnd(let engine):
                if let (t, n) = kernelStart.removeValue(forKey: engine) {
                    out.append(#"{"ph":"X","pid":\#(pid),"tid":\#(engine),"ts":\#(us(t)),"dur":\#(us(e.wallNs &- t)),"name":"kernel \#(jsonEscape(n))"}"#)
                }
            case .fault(let engine, let address, let access):
                stallStart[engine] = e.wallNs
                out.append(#"{"ph":"i","s":"t","pid":\#(pid),"tid":\#(engine),"ts":\#(us(e.wallNs)),"name":"\#(access) fault","args":{"address":"0x\#(String(address, radix: 16))"}}"#)
            case .replay(let engine):
                if let t = stallStart.removeValue(forKey: engine) {
                    out.append(#"{"ph":"X","pid":\#(pid),"tid":\#(engine),"ts":\#(us(t)),"dur":\#(us(e.wallNs &- t)),"name":"stalled"}"#)
                }
            case .batch(let faults, let serviced, let wallNs):
                out.append(#"{"ph":"X","pid":\#(pid),"tid":\#(faultTid),"ts":\#(us(e.wallNs)),"dur":\#(us(wallNs)),"name":"batch","args":{"faults":\#(faults),"serviced":\#(serviced)}}"#)
            case .toDevice(let addresses):
                out.append(#"{"ph":"i","s":"t","pid":\#(pid),"tid":\#(migrateTid),"ts":\#(us(e.wallNs)),"name":"to device","args":{"pages":\#(addresses.count)}}"#)
            case .toSystem(let addresses, let cause):
                let tid = cause == .cpuFault ? cpuTid : migrateTid
                out.append(#"{"ph":"i","s":"t","pid":\#(pid),"tid":\#(tid),"ts":\#(us(e.wallNs)),"name":"to system (\#(cause.rawValue))","args":{"pages":\#(addresses.count)}}"#)
            case .invalidate(let start, let end):
                out.append(#"{"ph":"i","s":"t","pid":\#(pid),"tid":\#(faultTid),"ts":\#(us(e.wallNs)),"name":"invalidate","args":{"pages":\#((end &- start) >> 12)}}"#)
            }
        }
    }
}
