fn main() {
    eprintln!("pulsar-lite-proxy: not built yet");
    std::process::exit(2);
}
