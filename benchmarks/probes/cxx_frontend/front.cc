// Feasibility probe for issue 6, not product code: what a compiled KServe v2 front end costs on
// its own. It parses each ModelInfer request and answers with a response genserve gave (canned),
// doing no model work. Usage: front HOST:PORT DIR (DIR holds meta.bin, config.bin, infer.bin).
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <grpcpp/grpcpp.h>
#include "grpc_service.grpc.pb.h"
using namespace inference;
static std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) { std::cerr << "cannot read " << p << std::endl; std::exit(2); }
  std::stringstream s; s << f.rdbuf(); return s.str();
}
class Svc final : public GRPCInferenceService::Service {
 public:
  ModelMetadataResponse meta; ModelConfigResponse config; ModelInferResponse infer;
  grpc::Status ServerLive(grpc::ServerContext*, const ServerLiveRequest*, ServerLiveResponse* r) override { r->set_live(true); return grpc::Status::OK; }
  grpc::Status ServerReady(grpc::ServerContext*, const ServerReadyRequest*, ServerReadyResponse* r) override { r->set_ready(true); return grpc::Status::OK; }
  grpc::Status ModelReady(grpc::ServerContext*, const ModelReadyRequest*, ModelReadyResponse* r) override { r->set_ready(true); return grpc::Status::OK; }
  grpc::Status ModelMetadata(grpc::ServerContext*, const ModelMetadataRequest*, ModelMetadataResponse* r) override { *r = meta; return grpc::Status::OK; }
  grpc::Status ModelConfig(grpc::ServerContext*, const ModelConfigRequest*, ModelConfigResponse* r) override { *r = config; return grpc::Status::OK; }
  grpc::Status ModelInfer(grpc::ServerContext*, const ModelInferRequest* q, ModelInferResponse* r) override {
    *r = infer; r->set_id(q->id()); return grpc::Status::OK;
  }
};
int main(int argc, char** argv) {
  Svc s;
  if (argc != 3) { std::cerr << "usage: front HOST:PORT DIR" << std::endl; return 2; }
  const std::string dir = argv[2];
  s.meta.ParseFromString(slurp(dir + "/meta.bin"));
  s.config.ParseFromString(slurp(dir + "/config.bin"));
  s.infer.ParseFromString(slurp(dir + "/infer.bin"));
  grpc::ServerBuilder b; b.AddListeningPort(argv[1], grpc::InsecureServerCredentials()); b.RegisterService(&s);
  auto server = b.BuildAndStart(); std::cout << "listening " << argv[1] << std::endl; server->Wait();
}
