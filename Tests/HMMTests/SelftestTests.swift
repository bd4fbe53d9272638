import XCTest
@testable import Conformance

/// One XCTest per kernel selftest (as `SelftestSuite.all` lists them), each run on both
/// variants, device-private and device-coherent, as the kernel's harness runs each fixture.
final class SelftestTests: XCTestCase {
    func run(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let t = try XCTUnwrap(SelftestSuite.all.first { $0.name == name })
        if let needs = t.needs { throw XCTSkip("needs huge pages (\(needs))") }
        for variant in Variant.allCases {
            // A pass, or a failure at the assertion where Linux 7.2 fails too (the kernel oracle's result).
            let (outcome, message) = t.classify(variant, t.run(variant))
            if outcome == .fail { XCTFail("\(t.fullName(variant)): \(message ?? "")", file: file, line: line) }
        }
    }
    func test_T01_open_close() throws { try run("open_close") }
    func test_T02_anon_read() throws { try run("anon_read") }
    func test_T03_anon_read_prot() throws { try run("anon_read_prot") }
    func test_T04_anon_write() throws { try run("anon_write") }
    func test_T05_anon_write_prot() throws { try run("anon_write_prot") }
    func test_T06_anon_write_child() throws { try run("anon_write_child") }
    func test_T07_anon_write_child_shared() throws { try run("anon_write_child_shared") }
    func test_T08_anon_write_huge() throws { try run("anon_write_huge") }
    func test_T09_anon_write_hugetlbfs() throws { try run("anon_write_hugetlbfs") }
    func test_T10_file_read() throws { try run("file_read") }
    func test_T11_file_write() throws { try run("file_write") }
    func test_T12_migrate() throws { try run("migrate") }
    func test_T13_migrate_file_private() throws { try run("migrate_file_private") }
    func test_T14_migrate_fault() throws { try run("migrate_fault") }
    func test_T15_migrate_release() throws { try run("migrate_release") }
    func test_T16_migrate_shared() throws { try run("migrate_shared") }
    func test_T17_migrate_mixed() throws { try run("migrate_mixed") }
    func test_T18_migrate_multiple() throws { try run("migrate_multiple") }
    func test_T19_anon_read_multiple() throws { try run("anon_read_multiple") }
    func test_T20_anon_teardown() throws { try run("anon_teardown") }
    func test_T21_mixedmap() throws { try run("mixedmap") }
    func test_T22_snapshot() throws { try run("snapshot") }
    func test_T23_compound() throws { try run("compound") }
    func test_T24_double_map() throws { try run("double_map") }
    func test_T25_exclusive() throws { try run("exclusive") }
    func test_T26_exclusive_mprotect() throws { try run("exclusive_mprotect") }
    func test_T27_exclusive_cow() throws { try run("exclusive_cow") }
    func test_T28_hmm_gup_test() throws { try run("hmm_gup_test") }
    func test_T29_hmm_cow_in_device() throws { try run("hmm_cow_in_device") }
    func test_T30_migrate_anon_huge_empty() throws { try run("migrate_anon_huge_empty") }
    func test_T31_migrate_anon_huge_zero() throws { try run("migrate_anon_huge_zero") }
    func test_T32_migrate_anon_huge_free() throws { try run("migrate_anon_huge_free") }
    func test_T33_migrate_anon_huge_fault() throws { try run("migrate_anon_huge_fault") }
    func test_T34_migrate_partial_unmap_fault() throws { try run("migrate_partial_unmap_fault") }
    func test_T35_migrate_remap_fault() throws { try run("migrate_remap_fault") }
    func test_T36_migrate_anon_huge_err() throws { try run("migrate_anon_huge_err") }
    func test_T37_migrate_anon_huge_zero_err() throws { try run("migrate_anon_huge_zero_err") }
    func test_T38_benchmark_thp_migration() throws { try run("benchmark_thp_migration") }
}
